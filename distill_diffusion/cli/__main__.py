"""``python -m distill_diffusion.cli`` (what ``accelerate launch -m distill_diffusion.cli`` runs)."""

import sys

from distill_diffusion.cli import main

sys.exit(main())

"""What LADD and ADD share (Sauer et al., arXiv:2403.12015 and arXiv:2311.17042): the one-step student, its options,
the two phases, the discriminator's losses, conditioned heads, the distillation term and the export.

The methods differ only in what the discriminator looks at: LADD re-noised latents through the frozen teacher UNet,
ADD decoded images through a frozen ViT.
"""

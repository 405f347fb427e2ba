"""The embedded toy world: a procedural captioned dataset (world), a generated CLIP tokenizer (tokenizer),
random-initialised tiny SD components saved as a stock pipeline (tiny), and a toy VAE fitter (vae).

Import the submodules directly; ``tiny`` pulls in diffusers, the dataset alone does not.
"""

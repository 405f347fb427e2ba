"""The training engine: the loop (:mod:`.loop`), building a run (:mod:`.build`), checkpoints, EMA, optimizers,
the data loop, validation and export. It runs any method of :mod:`distill_diffusion.trainers.methods`
without knowing which."""

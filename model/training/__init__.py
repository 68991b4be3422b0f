"""Training the FAE stages (Ia: compressor + feature decoder, Ib: pixel decoder, II: the generator).

Import from the submodules (`model.training.runner.train`, `model.training.config.TrainConfig`); this package
file stays import-free so that declaring the CLI commands never imports torch.
"""

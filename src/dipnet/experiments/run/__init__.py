"""One training run, from a `config.RunConfig` to a folder of results: the lifecycle
(`train`: plan -> prepare -> take the folder -> the epochs -> finish), the epoch loop and its
callbacks (`loop`), `checkpoint`, `distributed` (torchrun), `metrics`, `rng`, the folder's
states and lock (`rundir`, `locks`), trackers (`tracking`) and loading a finished run
(`runs.load_run`)."""

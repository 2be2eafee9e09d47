"""Many runs: the sweep grid and its runner (`grid`), the backends that run it (`backends`:
local processes, Ray, submitit / Slurm), and tuning with Optuna (`tune`, which maximises
`objective`)."""

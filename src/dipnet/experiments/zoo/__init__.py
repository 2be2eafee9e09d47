"""The registries a run draws from: data sets (`data`), models (`models`), training methods
(`methods`), and what they need: the training-input perturbations (`perturb`), the fixed
perturbed training sets (`fixed`) and input normalisation inside the model (`normalize`)."""

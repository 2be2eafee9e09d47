"""The command line's grammar: every `dipnet` subcommand's options, defined without importing
torch, the experiment harness or any optional dependency.

`dipnet --help` and every ``dipnet COMMAND --help`` therefore answer in a fraction of a second,
also on a core-only install. Each module here registers its subcommands and names, as a
``"module:function"`` string, the implementation that runs them (imported only when the command
runs) and the pip extra that implementation needs:

==============  ====================================================  ===========
command         implementation                                        extra
==============  ====================================================  ===========
train           dipnet.experiments.cli:run_train_command              experiments
compare         dipnet.experiments.sweep_cli:compare_command          experiments
report          dipnet.experiments.sweep_cli:report_command           experiments
demo            dipnet.experiments.sweep_cli:demo_command             experiments
tune            dipnet.experiments.tune_cli:tune_command              tune
evaluate        dipnet.evaluation.cli:run_evaluate_command            eval
certify         dipnet.experiments.run.certified:run_certify_command      eval
text-classify   dipnet.hf_experiments.cli:text_command                text
math            dipnet.hf_experiments.cli:math_command                math
==============  ====================================================  ===========

The grammar shared by all of them (``--set`` overrides, ``--threads``, ``--device``,
``--no-progress``, ``--out`` and the deprecated old spellings) lives in `dipnet.commands.grammar`;
the names shown in ``--help`` (data sets, models, methods) in `dipnet.commands.names`.
"""

from __future__ import annotations

from dipnet._util.modules import module_installed

__all__ = ["COMMAND_MODULES", "module_installed"]

#: The modules that register subcommands, in the order ``dipnet --help`` lists them.
COMMAND_MODULES = (
    "dipnet.commands.train",     # train
    "dipnet.commands.sweep",     # compare, report, demo
    "dipnet.commands.tune",      # tune
    "dipnet.commands.evaluate",  # evaluate
    "dipnet.commands.certify",   # certify
    "dipnet.commands.hf",        # text-classify, math
)

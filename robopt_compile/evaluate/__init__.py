"""Does the optimized policy still do the task? Closed-loop and open-loop evaluation.

**Closed loop** (``closedloop``): the engine, run through the same backend runner the benchmark
harness uses, drives a simulated task (``robopt_compile.tasks``) for N seeded episodes; the
original model runs the same seeds. The report gives each engine's mean return with a 95%
t-interval and its success rate with a Wilson interval, and, because both ran the same seeds, a
*paired* comparison: the per-seed return difference with its t-interval and a paired t-test,
and the success difference with an exact McNemar test (``stats``). A drop whose interval
excludes zero is ``worse``; one whose interval straddles zero is ``no detectable change``
(noise at this N).

**Open loop** (``openloop``): recorded observations (``episodes.npz``) go through the original
and the optimized engine; the report gives the action error per dimension, the L2 error, the
largest deviation, gripper flips (sign changes of a chosen dimension) and, for action chunks,
how the error grows along the chunk.

The original ("reference") is the unoptimized fp32 model run in ONNX Runtime (``policies``):
the exported ONNX the compiler started from (``compile --eval``), the bundle's recorded source
re-exported (``evaluate``), or whatever ``--reference`` names (another bundle or a model
source). ``spec`` parses ``--eval`` and finds a model's task.

Modules, lowest first: ``spec`` and ``stats`` (no robopt imports beyond errors and task
types), ``policies``, ``episodes`` (seeds one after another here), ``distributed`` (units on
an executor), ``pooled`` (a compile's own episodes on this machine's cores), ``closedloop``,
``openloop``. Importing the package loads no simulator,
runtime, scipy or torch.
"""

from robopt_compile.evaluate.closedloop import (
    GUARD_SEED_OFFSET,
    ClosedLoopGuard,
    Criteria,
    Progress,
    closed_loop,
    evaluation_drop,
    paired,
    run_episodes,
    seeds_for,
    summarize,
    task_drop,
)
from robopt_compile.evaluate.openloop import action_error, load_dataset, open_loop, record_episodes
from robopt_compile.evaluate.policies import (
    TimedPolicy,
    adapted,
    adapter_for,
    any_policy,
    bundle_meta,
    bundle_policy,
    check_policy_fits,
    driver_policy,
    onnx_policy,
    source_policy,
    vla_eager_policy,
)
from robopt_compile.evaluate.spec import (
    DEFAULT_EPISODES,
    EvalSpec,
    default_metric,
    looks_like_bundle,
    parse_eval_spec,
    task_for_manifest,
    task_for_source,
)
from robopt_compile.evaluate.stats import mcnemar_p, mean_ci, paired_t_p, wilson

__all__ = [
    "DEFAULT_EPISODES",
    "GUARD_SEED_OFFSET",
    "ClosedLoopGuard",
    "Criteria",
    "EvalSpec",
    "Progress",
    "TimedPolicy",
    "action_error",
    "adapted",
    "adapter_for",
    "any_policy",
    "bundle_meta",
    "bundle_policy",
    "check_policy_fits",
    "closed_loop",
    "default_metric",
    "driver_policy",
    "evaluation_drop",
    "load_dataset",
    "looks_like_bundle",
    "mcnemar_p",
    "mean_ci",
    "onnx_policy",
    "open_loop",
    "paired",
    "paired_t_p",
    "parse_eval_spec",
    "record_episodes",
    "run_episodes",
    "seeds_for",
    "source_policy",
    "summarize",
    "task_drop",
    "task_for_manifest",
    "task_for_source",
    "vla_eager_policy",
    "wilson",
]

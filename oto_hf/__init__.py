"""oto_hf: Only-Train-Once structured pruning for Hugging Face Transformers."""

__version__ = "0.1.0"

from .bottlenecks import bottleneck_families  # noqa: E402
from .costs import group_flop_costs  # noqa: E402
from .graph import rules  # noqa: E402
from .graph.discover import discover_groups  # noqa: E402
from .graph.export import TracingError, default_example_inputs  # noqa: E402
from .graph.groups import GroupSet, TensorSlice, UnprunableComponent, ZeroInvariantGroup  # noqa: E402
from .graph.rules import RuleContext, register_op_rule  # noqa: E402
from .models import register_default_architectures, register_pruned_architecture  # noqa: E402
from .optim import DHSPG  # noqa: E402
from .saving import save_pruned  # noqa: E402
from .stats import count_flops, count_parameters, group_sparsity  # noqa: E402
from .subnet import SubnetMismatchError, construct_subnet  # noqa: E402
from .trainer import OTOTrainer  # noqa: E402
from .training_args import OTOTrainingArguments  # noqa: E402


register_default_architectures()

__all__ = [
    "DHSPG",
    "GroupSet",
    "OTOTrainer",
    "OTOTrainingArguments",
    "RuleContext",
    "SubnetMismatchError",
    "TensorSlice",
    "TracingError",
    "UnprunableComponent",
    "ZeroInvariantGroup",
    "__version__",
    "bottleneck_families",
    "construct_subnet",
    "count_flops",
    "count_parameters",
    "default_example_inputs",
    "discover_groups",
    "group_flop_costs",
    "group_sparsity",
    "register_op_rule",
    "register_pruned_architecture",
    "rules",
    "save_pruned",
]

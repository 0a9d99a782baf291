"""oto_hf: Only-Train-Once structured pruning for Hugging Face Transformers."""

from ._version import __version__
from .bottlenecks import bottleneck_families
from .costs import group_flop_costs
from .discovery import discover_groups
from .erasing import erase_operators, find_operators
from .export import ExportReport, register_format, registered_formats
from .graph import rules
from .graph.export import TracingError, default_example_inputs
from .graph.groups import GroupSet, TensorSlice, UnprunableComponent, ZeroInvariantGroup
from .graph.operators import Operator
from .graph.rules import RuleContext, register_op_rule
from .models import register_default_architectures, register_pruned_architecture
from .optim import DHSPG
from .pruned_folder import PrunedFolder, read_pruned_folder
from .record import PruningRecord
from .saving import export_pruned, save_pruned
from .stats import count_flops, count_parameters
from .subnet import SubnetMismatchError, construct_subnet
from .trainer import OTOTrainer
from .training_args import OTOTrainingArguments

register_default_architectures()

__all__ = [
    "DHSPG",
    "ExportReport",
    "GroupSet",
    "OTOTrainer",
    "OTOTrainingArguments",
    "Operator",
    "PrunedFolder",
    "PruningRecord",
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
    "erase_operators",
    "export_pruned",
    "find_operators",
    "group_flop_costs",
    "register_format",
    "register_op_rule",
    "read_pruned_folder",
    "register_pruned_architecture",
    "registered_formats",
    "rules",
    "save_pruned",
]

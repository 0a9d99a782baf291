"""Registration of the pruned (`oto_<type>`) config and model classes with the transformers Auto classes."""

from __future__ import annotations

import transformers
from transformers import AutoConfig
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .pruned import PrunedModelMixin, pruned_config_class, pruned_model_class, resize_to_config

# Auto class name -> name of its model-type mapping in `transformers.models.auto.modeling_auto`.
# Private: these `*_MAPPING_NAMES` tables and `configuration_auto.CONFIG_MAPPING` (checked against
# transformers 5.24, pinned by tests/test_private_apis.py).
AUTO_CLASSES: dict[str, str] = {
    "AutoModel": "MODEL_MAPPING_NAMES",
    "AutoModelForPreTraining": "MODEL_FOR_PRETRAINING_MAPPING_NAMES",
    "AutoModelForCausalLM": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForMaskedLM": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "AutoModelForSequenceClassification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForQuestionAnswering": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    "AutoModelForTokenClassification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForMultipleChoice": "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES",
    "AutoModelForImageClassification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
}

# Architectures registered when oto_hf is imported; others are registered by `save_pruned` in the saving process
# and load elsewhere with `trust_remote_code=True`.
DEFAULT_MODEL_TYPES = ("bert", "roberta", "distilbert", "llama", "qwen2", "gpt2", "vit", "resnet", "convnext")

_registered: dict[str, type] = {}


def model_classes_for(model_type: str) -> dict[str, str]:
    """Auto class name -> stock model class name, for every Auto class that supports `model_type`."""
    found = {}
    for auto_name, mapping_name in AUTO_CLASSES.items():
        class_name = getattr(modeling_auto, mapping_name, {}).get(model_type)
        if isinstance(class_name, str):
            found[auto_name] = class_name
    return found


def register_pruned_architecture(model_type: str) -> type:
    """Register `oto_<model_type>` with AutoConfig and the Auto model classes; returns the pruned config class."""
    if model_type in _registered:
        return _registered[model_type]
    config_class = pruned_config_class(CONFIG_MAPPING[model_type])
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    for auto_name, class_name in model_classes_for(model_type).items():
        model_class = pruned_model_class(getattr(transformers, class_name), config_class)
        getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)
    _registered[model_type] = config_class
    return config_class


def register_default_architectures() -> None:
    for model_type in DEFAULT_MODEL_TYPES:
        register_pruned_architecture(model_type)


__all__ = [
    "AUTO_CLASSES",
    "PrunedModelMixin",
    "model_classes_for",
    "pruned_config_class",
    "pruned_model_class",
    "register_pruned_architecture",
    "resize_to_config",
]

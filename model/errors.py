"""Errors the model stack raises for bad input: each message says what was wrong and what to do."""


class FAEError(Exception):
    """Base class of the model stack's own errors."""


class InvalidInputError(FAEError, ValueError):
    """A caller passed something the model cannot use (wrong size, label out of range, bad step count...)."""


class WeightsNotFoundError(FAEError, FileNotFoundError):
    """A weights directory is missing or does not hold what it should."""


class GenerationCanceled(FAEError):
    """The progress callback asked generation to stop; raised at the next denoising step."""


class DatasetError(InvalidInputError):
    """A training or fine-tune dataset cannot be used (too few or too many images, unsafe archive...)."""


class AdapterError(InvalidInputError):
    """A LoRA adapter directory is missing, malformed or does not fit the pipeline."""


class AdapterMismatchError(AdapterError):
    """A LoRA adapter was trained on another base model than the one it is being loaded onto."""


class TrainingCanceled(GenerationCanceled):
    """The cancel check asked a training or fine-tune run to stop (its last checkpoint stays resumable)."""

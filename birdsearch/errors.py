"""Typed errors. Each message names the bad value and, where there is one, the fix.

The service maps these onto HTTP status codes (see ``http_status``), the CLI prints them without a
traceback; anything else is a bug.
"""


class BirdsearchError(Exception):
    """A problem the user can act on. ``code`` is a stable machine-readable name."""

    code = "error"
    http_status = 400


class ConfigError(BirdsearchError):
    """A setting, spec or argument from outside is invalid."""

    code = "bad_config"
    http_status = 422


class ModelUnavailableError(BirdsearchError):
    """Weights are not on this machine and cannot be fetched (offline, or a wrong path)."""

    code = "model_unavailable"
    http_status = 503


class CheckpointError(BirdsearchError):
    """A saved model or checkpoint is missing, truncated, or of another format."""

    code = "bad_checkpoint"
    http_status = 500


class AudioError(BirdsearchError):
    """The recording cannot be used; subclasses say why."""

    code = "bad_audio"
    http_status = 422


class UnsupportedAudioError(AudioError):
    """Not audio, or a container/codec that libsndfile cannot read."""

    code = "unsupported_audio"
    http_status = 415


class CorruptAudioError(AudioError):
    """Recognised as audio, but decoding failed part-way or produced invalid samples."""

    code = "corrupt_audio"
    http_status = 422


class EmptyAudioError(AudioError):
    """Zero frames, or too short to hold any sound."""

    code = "empty_audio"
    http_status = 422


class SilentAudioError(AudioError):
    """Decodes fine but holds only digital silence."""

    code = "silent_audio"
    http_status = 422


class AudioTooLongError(AudioError):
    """Longer than the configured limit."""

    code = "audio_too_long"
    http_status = 413


class ImageError(BirdsearchError):
    """An image cannot be decoded or is refused (truncated, not an image, too many pixels)."""

    code = "bad_image"
    http_status = 422


class IndexFormatError(BirdsearchError):
    """An index version directory is missing, incomplete or of another format."""

    code = "bad_index"
    http_status = 500


class StorageError(BirdsearchError):
    """A folder a command writes to cannot take the writes: its disk is full, or it is read-only."""

    code = "storage"
    http_status = 507


class IncompleteCheckpointError(CheckpointError):
    """Weights whose names do not match the architecture: loading them would leave some weights random.

    Typical causes: a checkpoint saved by a library version that named its weights otherwise, or the
    weights of another model beside this model's config.
    """

    code = "incomplete_checkpoint"
    shown = 8  # keys named per list in the message; the counts are always complete

    def __init__(self, what: str, weights: str, missing: list[str], unexpected: list[str]):
        self.missing, self.unexpected = sorted(missing), sorted(unexpected)
        parts = [f"{len(keys)} {label} ({self.sample(keys)})" for label, keys in
                 (("missing", self.missing), ("unexpected", self.unexpected)) if keys]  # fmt: skip
        super().__init__(
            f"{what}: the weights in {weights} do not match the model's config: " + "; ".join(parts) + ". "
            "Loading stopped, because those weights would be left random. Use weights saved for this "
            "architecture (download them again, or re-save the model with the library version that "
            "trained it)."
        )

    @classmethod
    def sample(cls, keys: list[str]) -> str:
        more = f", and {len(keys) - cls.shown} more" if len(keys) > cls.shown else ""
        return ", ".join(keys[: cls.shown]) + more


class FrontEndSettingError(ConfigError):
    """A feature-extractor setting (``preprocessor_config.json``) that the audio front end does not implement."""

    code = "unsupported_front_end"

    def __init__(self, setting: str, value: object, reason: str):
        self.setting, self.value = setting, value
        super().__init__(f"feature extractor setting {setting}={value!r} is not supported: {reason}")

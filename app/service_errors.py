"""What the service refuses, as domain errors: app/errors.py maps each kind to its HTTP status.

The service knows nothing of HTTP; each error carries a stable machine `code` and a message a person can
act on, and the edge decides the status (one table, in app/errors.py)."""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    code: ClassVar[str]

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail  # more for the caller, beside the message (the edge puts it in the error body)


class NotReady(ServiceError):
    """The model is still loading, or failed to load."""

    code = "not_ready"


class ShuttingDown(ServiceError):
    code = "shutting_down"


class PromptTooLong(ServiceError):
    """Prompt (+ target or new tokens) over the model's context."""

    code = "prompt_too_long"


class InvalidPrompt(ServiceError):
    """A prompt the model cannot take in the asked format (chat without a chat template, untokenizable)."""

    code = "validation_error"


class TrainingTimedOut(ServiceError):
    """Training ran past its budget; nothing was stored."""

    code = "training_timeout"


class IdempotencyKeyReused(ServiceError):
    code = "idempotency_key_reused"


class AdapterRefused(ServiceError):
    """A stored edit that this server cannot run (another base model, layer, rank, or corrupted bytes)."""

    code = "adapter_mismatch"


class GenerationFailed(ServiceError):
    """Decoding failed on the server (a bug): every row of that batch gets this error, none waits forever."""

    code = "generation_failed"


class AlreadyRevoked(ServiceError):
    """A revoke of an edit already revoked: nothing changed, and the reason sent was not recorded."""

    code = "already_revoked"


class AlreadyActive(ServiceError):
    """A restore of an edit already active: nothing changed, and the reason sent was not recorded."""

    code = "already_active"


class ActivationFailed(ServiceError):
    """The edit was committed but the engine refused it: a server-side fault, never the client's."""

    code = "activation_failed"

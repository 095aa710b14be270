"""Image build step (Dockerfile): do what the server's start does to the bundled model before it can serve
(app/service.py, EditService.load): dequantize the GGUF into $SOLA_MODEL_CACHE_DIR and compute the routing
encoders' background states, which are cached beside the weights. Containers then start in seconds and
write nothing there (the directory can be read-only; see deploy/kubernetes/deployment.yaml)."""

from __future__ import annotations

from app.settings import Settings
from editors.engine import EditingEngine
from editors.model_host import ModelHost
from editors.types import engine_config


def main() -> None:
    settings = Settings()
    host = ModelHost.load(
        settings.model, settings.data_dir, settings.device, settings.resolved_model_cache_dir, dtype=settings.dtype
    )
    EditingEngine(host, engine_config(**settings.engine_knobs()))
    print(f"prepared {host.name} ({host.fingerprint[:12]}) in {settings.resolved_model_cache_dir}")


if __name__ == "__main__":
    main()

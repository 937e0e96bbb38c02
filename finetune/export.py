"""Export an encoder's image tower to ONNX (fp32 and int8), for ENCODER_RUNTIME=onnx.

``python -m finetune.export --checkpoint DIR`` writes into ``DIR/onnx/`` (a fine-tuning run does
this itself); ``--model NAME --pretrained TAG --out DIR`` exports any open_clip model. Without
options it exports what MODEL_CHECKPOINT or MODEL_NAME/MODEL_PRETRAINED name, where the service
looks for it. A service with ENCODER_RUNTIME=onnx runs this itself when it finds no export.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lookalike.cli import description, program
from lookalike.errors import LookalikeError
from lookalike.files import stop_message
from lookalike.logs import configure_logging
from lookalike.settings import Settings

log = logging.getLogger(__name__)


def export_checkpoint(checkpoint: Path) -> None:
    """The end of a fine-tuning run: the checkpoint's ONNX export, beside it. A model that cannot
    be exported keeps its checkpoint (torch serves it); the log says so."""
    from lookalike.model_source import ModelSource
    from lookalike.onnx_encoder import EXPORT_DIR
    from lookalike.onnx_export import export_encoder

    try:
        report = export_encoder(ModelSource("checkpoint", str(checkpoint.resolve())), checkpoint / EXPORT_DIR)
    except LookalikeError as e:
        log.warning("checkpoint not exported to ONNX (ENCODER_RUNTIME=torch serves it)", extra={"reason": e.message})
        return
    log.info(report.line())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=program("finetune.export"), description=description(__doc__))
    parser.add_argument("--checkpoint", type=Path, help="a fine-tuned checkpoint (default MODEL_CHECKPOINT)")
    parser.add_argument("--model", help="an open_clip architecture (default MODEL_NAME), when no checkpoint")
    parser.add_argument("--pretrained", help="its weights: a tag, hf-hub:org/repo or a file (default MODEL_PRETRAINED)")
    parser.add_argument("--out", type=Path, help="where the files go (default: DIR/onnx, or a folder under ONNX_DIR)")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    overrides = {"model_checkpoint": args.checkpoint, "model_name": args.model, "model_pretrained": args.pretrained}
    try:
        settings = Settings.from_env().with_overrides(**{k: v for k, v in overrides.items() if v is not None})
        from lookalike.model_source import ModelSource
        from lookalike.onnx_encoder import export_directory
        from lookalike.onnx_export import export_encoder

        report = export_encoder(ModelSource.from_settings(settings), args.out or export_directory(settings))
    except (LookalikeError, OSError) as e:  # OSError: an --out that cannot be written, a full disk
        print(f"export: error: {stop_message(e)}", file=sys.stderr)
        return 2
    print(report.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())

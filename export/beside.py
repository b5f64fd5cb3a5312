"""The full export that `--fp32-first` (make serve) starts beside the service once its fp32 file serves: the int8
candidates, the whole parity gate, the drift profile and the registered pyfunc, imported as a new version that the
service switches to. `export.export.Beside` starts it with the config it wrote and tells whether it still runs.

    python -m export.beside --config <work_dir>-beside.yaml [key=value ...]
"""

from __future__ import annotations

from export.export import ExportConfig, refusal_exits_2, run
from training.config import command_line
from training.registry import setup_tracking


def main() -> None:
    export, _ = command_line(ExportConfig, __doc__)
    setup_tracking()
    with refusal_exits_2():
        run(export)


if __name__ == "__main__":
    main()

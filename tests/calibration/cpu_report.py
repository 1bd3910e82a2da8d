"""Run the per-graph accuracy report in this process and print it as JSON: the test in
test_every_cpu.py starts it under ``qemu-x86_64 -cpu Haswell`` (an AVX2-only CPU).

    python cpu_report.py CAPTURE.pkl FLOAT_DIR QUANT_DIR METHOD
"""

import json
import pickle
import sys

from feather.calibration import METHODS, evaluate


def main(capture: str, float_dir: str, quant_dir: str, method: str) -> None:
    with open(capture, "rb") as f:
        captured = pickle.load(f)
    report = evaluate(captured, float_dir, quant_dir, method, METHODS[method].bound, chains=False)
    print(json.dumps(report.to_json()))


if __name__ == "__main__":
    main(*sys.argv[1:])

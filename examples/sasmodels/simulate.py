"""Write a series of small-angle scattering curves to fit: charged ellipsoids (sasmodels'
ellipsoid@hayter_msa) that grow with temperature, with 3 % noise, one file per temperature.

    python simulate.py DIRECTORY [COUNT]   # writes DIRECTORY/T20.dat, T25.dat, ... (columns Q, I, dI)

The data a campaign fits in the README and the tests; sasmodels' own loader (sasdata) reads them.
"""

import sys
from pathlib import Path

import numpy as np
from sasmodels.core import load_model
from sasmodels.direct_model import call_kernel

TRUE = dict(scale=1.0, background=0.001, radius_polar=20, sld=4, sld_solvent=1, volfraction=0.05, charge=19)


def main(out: Path, count: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    q = np.logspace(-2.5, -0.6, 60)
    kernel = load_model("ellipsoid@hayter_msa").make_kernel([q])
    noise = np.random.default_rng(7)
    for i in range(count):
        temperature = 20 + 5 * i
        iq = call_kernel(kernel, {**TRUE, "radius_equatorial": 40 + 4 * i, "temperature": 273 + temperature})
        di = 0.03 * iq + 1e-4
        columns = np.column_stack([q, iq + noise.normal(0, di), di])
        np.savetxt(out / f"T{temperature}.dat", columns, header="Q I dI")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 5)

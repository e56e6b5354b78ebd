"""The paper's claims, tested at this machine's budgets: runs what ``benchmarks/evidence.yaml``
lists and is not yet recorded, then rebuilds ``benchmarks/RESULTS.md`` from the per-seed CSVs.

    python benchmarks/evidence.py --report-only                 # the page from the committed CSVs
    python benchmarks/evidence.py --jobs 2                      # every missing run, 2 at a time
    python benchmarks/evidence.py --only c2_coordsum_3x10 --launcher magpo_slurm --launcher-option partition=gpu

Code: :mod:`benchmarl_ext.evidence` (the list, the runs, the CSVs) and
:mod:`benchmarl_ext.evidence_page` (statistics, verdicts, the page).
"""

from benchmarl_ext.evidence_page import main

if __name__ == "__main__":
    main()

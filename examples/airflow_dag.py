"""An Airflow DAG that runs craftmart-batch every hour and then checks the marts' freshness.

Copy it into your DAGs folder. The worker needs craftmart-batch installed (its own venv
is best: set CRAFTMART_BIN) and the warehouse DSN in the environment as CRAFTMART_DSN
(an Airflow Variable or connection rendered into ``env`` works too). Nothing here is
specific to an Airflow version beyond ``BashOperator``, which fails the task on any
non-zero exit:

    0  the run committed             2  it could not start (database, source, config)
    1  (status) a mart is stale      3  another run holds the warehouse lock

A run that overlaps the previous one exits 3 and the task fails; add ``--wait`` to the
command to queue behind it instead. A run is atomic, so a failed or killed task leaves
the warehouse as it was and the next run (or a retry) finishes the job.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow import DAG
from airflow.operators.bash import BashOperator

CRAFTMART = os.environ.get("CRAFTMART_BIN", "craftmart-batch")

# The JSON summary of the run (rows per source, DWH changes, mart rows) is the task's log.
RUN_BATCH = f"set -euo pipefail\n{CRAFTMART} run --json\n"

with DAG(
    "craftmart_batch",
    description="Load the marketplace's sources into dwh and refresh the marts",
    schedule="15 * * * *",
    start_date=dt.datetime(2024, 1, 1),
    catchup=False,  # one run catches up everything; never replay missed hours
    max_active_runs=1,
    default_args={
        "retries": 1,
        "retry_delay": dt.timedelta(minutes=5),
        "execution_timeout": dt.timedelta(hours=1),
    },
    tags=["craftmart"],
) as dag:
    run_batch = BashOperator(task_id="run_batch", bash_command=RUN_BATCH)
    check_freshness = BashOperator(
        task_id="check_freshness",
        bash_command=f"set -euo pipefail\n{CRAFTMART} status --max-age 2h\n",
    )
    run_batch >> check_freshness

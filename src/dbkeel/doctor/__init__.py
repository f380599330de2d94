"""``dbkeel doctor``: audit the configuration against best practice and the live server.

The same checks as the command line, for code (the demo, a deploy script, a health
page)::

    from dbkeel.doctor import run_doctor

    report = await run_doctor(settings, workers=4, metadata=Base.metadata)
    if report.exit_code(strict=True):
        for finding in report.problems:
            print(finding.level, finding.id, finding.what, "->", finding.fix)

Every check is described in docs/doctor.md (id, what, why, fix).
"""

from dbkeel.doctor.findings import REPORT_SCHEMA as REPORT_SCHEMA
from dbkeel.doctor.findings import DoctorOptions as DoctorOptions
from dbkeel.doctor.findings import Finding as Finding
from dbkeel.doctor.findings import Report as Report
from dbkeel.doctor.runner import load_metadata as load_metadata
from dbkeel.doctor.runner import run_doctor as run_doctor

__all__ = ["REPORT_SCHEMA", "DoctorOptions", "Finding", "Report", "load_metadata", "run_doctor"]

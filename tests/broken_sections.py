"""A plugin whose report section raises (loaded with `-p broken_sections` in tests)."""

from memeval import hookimpl


@hookimpl
def memeval_report_sections(evaluation, records):
    raise RuntimeError("this section is broken on purpose")

"""What a run says about its model: temperature calibration, the per-class report and the end-of-fit analysis
(both callbacks), and ``report.html`` (``report/``)."""

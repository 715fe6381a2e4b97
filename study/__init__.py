"""The comparison study: its methods (``methods``), its runner (``run``), its tables and pages (``report``)."""

"""napari adapter for hires-domain: readers, writers, sample data and widgets (npe2 plugin
``hires-domain``). Everything that is not Qt lives in the core library or in Qt-free modules
here (``layers``), so it is testable without a viewer."""

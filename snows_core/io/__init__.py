"""Input and output: checkpoints (`checkpoint`), datasets (`data`) and their files (`datafiles`), and the catalog
of names and footprints the door reads without torch (`catalog`)."""

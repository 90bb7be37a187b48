"""Input and output: checkpoints (`checkpoint`), datasets (`data`) and their files (`datafiles`, decoded once per
store by `decoded`), files written whole (`atomic`), and the catalog of names and footprints the door reads
without torch (`catalog`)."""

"""One run of one dataset: where it reads and writes, its locks, what it read and wrote, the machine, seeds,
its notebooks run headlessly."""

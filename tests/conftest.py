import os

# Tests never reach the Hub or wandb.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

# Under pytest-xdist (`make test` runs one worker per core) every worker, and every process a test
# starts, computes on one thread: the workers already use the cores, and torch's default of one
# thread per core in each of them would oversubscribe the machine (tiny models run several times
# slower).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

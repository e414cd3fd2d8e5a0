"""Shared test setup: one torch thread per test process. The tests use tiny shapes, where a second thread
only adds synchronisation (on a busy 2-core machine tiny ops ran ~100x slower with 2 threads), and the
repository root on sys.path so the top-level modules import without installation."""
import os
import sys

import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

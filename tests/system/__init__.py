"""The whole system under stress: crashes, faults, damage, hostile data, fidelity, a real VM, the machine set-up."""

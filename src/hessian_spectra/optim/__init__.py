"""Optimizers fed by curvature estimates from Hessian-vector products."""

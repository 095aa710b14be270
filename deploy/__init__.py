"""Deployment helpers and files: the runtime lock (lock.py), the image build step, compose and Kubernetes."""

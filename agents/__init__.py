"""Agents: their definitions, dialogue policies, executors and plugins. Pure logic; the streams run it."""

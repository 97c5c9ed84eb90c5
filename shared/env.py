"""Small helpers for reading settings from the environment."""


def env_flag(env, name: str, default: bool = False) -> bool:
    return env.get(name, "1" if default else "0").strip().lower() in ("1", "true", "yes", "on")

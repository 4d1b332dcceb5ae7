"""The commands behind ``python -m helpers COMMAND`` (doctor, bench, run, serve, grade,
labs, mosquitto): each module has a ``main(argv)``."""

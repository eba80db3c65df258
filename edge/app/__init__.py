"""The appliance shell: its config, the pipeline factory, the service, bundle installs, health, systemd."""

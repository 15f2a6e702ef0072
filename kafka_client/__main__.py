"""``python -m kafka_client produce|load-world|consume|create-topics …`` (see ``kafka_client``)."""
import sys

from kafka_client import main

sys.exit(main())

"""Fernet tokens the way pyaiot makes and checks them (pyaiot/common/auth.py).

    fernet_token.py make KEY_FILE           prints Fernet(private).encrypt(secret)
    fernet_token.py verify KEY_FILE TOKEN   exits 0 if TOKEN decrypts to secret
"""

import configparser
import sys

from cryptography.fernet import Fernet, InvalidToken


def keys(path):
    config = configparser.ConfigParser()
    config.read(path)
    return config["keys"]["private"], config["keys"]["secret"]


def main(argv):
    private, secret = keys(argv[2])
    fernet = Fernet(private.encode())
    if argv[1] == "make":
        print(fernet.encrypt(secret.encode()).decode())
        return 0
    try:
        return 0 if fernet.decrypt(argv[3].encode()) == secret.encode() else 1
    except InvalidToken:
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

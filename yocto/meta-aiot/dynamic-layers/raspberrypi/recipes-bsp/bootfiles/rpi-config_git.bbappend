# The 6LoWPAN radio: an AT86RF233 on SPI0 CE0, interrupt GPIO23, reset GPIO24, sleep GPIO25.
ENABLE_SPI_BUS = "1"
RPI_EXTRA_CONFIG:append = "\n# aiot: the IEEE 802.15.4 radio\ndtoverlay=at86rf233\n"

include $(sort $(wildcard $(BR2_EXTERNAL_AIOT_PATH)/package/*/*.mk))

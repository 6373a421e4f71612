"""The simulated pilot line: pure-Python physics (model), an OPC-UA server and an MQTT publisher."""

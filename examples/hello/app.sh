#!/bin/sh
# Prints a greeting and the machine it runs on.
if [ "$1" = "--check" ]; then exit 0; fi
name=${2:-world}
echo "@GREETING@, $name ($(uname -m))"

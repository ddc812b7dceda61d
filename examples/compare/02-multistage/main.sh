#!/bin/sh
echo "built for @ARCH@: $*"

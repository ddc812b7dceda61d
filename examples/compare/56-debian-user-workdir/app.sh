#!/bin/bash
echo web

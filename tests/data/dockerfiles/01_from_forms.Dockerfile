FROM alpine
FROM alpine:3.19 AS build
FROM --platform=$BUILDPLATFORM golang:1.22 as Builder
FROM scratch

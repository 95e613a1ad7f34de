FROM alpine
CMD echo hi
CMD ["echo", "hi"]
ENTRYPOINT ["/bin/sh", "-c"]
ENTRYPOINT exec top -b
CMD ["a", \
"b"]

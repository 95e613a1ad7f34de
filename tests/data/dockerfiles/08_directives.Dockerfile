# syntax=docker/dockerfile:1.7
# check=skip=JSONArgsRecommended

# just a comment
FROM alpine

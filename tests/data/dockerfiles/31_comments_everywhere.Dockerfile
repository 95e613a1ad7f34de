# leading comment
FROM alpine
# comment
    # indented comment
RUN echo a # not a comment
RUN echo \
  # comment in continuation
  \
  done

FROM alpine
ONBUILD RUN echo hi
ONBUILD COPY --from=build /a /b
ONBUILD RUN ["a", "b"]
ONBUILD ENV A=1 B=2
onbuild workdir /x
